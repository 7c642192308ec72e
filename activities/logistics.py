"""Activities of the logistics service: ship terminals or book their installation, schedule the
operating training, book inspections after go-live, and undo them (recall, cancel, collect the
terminals back).

Each passes its step's idempotency key as the `Idempotency-Key` header, so a retried activity
never ships twice; a refusal (4xx, e.g. recalling a delivered parcel) is non-retryable. A step's
`merchant_id` is sent only when the merchant's account set it (its callbacks then go to the
merchant's routes), so an application's requests are the same as before it existed.
"""

from __future__ import annotations

from collections.abc import Collection

from temporalio import activity

from activities import catalog
from activities.http import ServiceClient, path, service_url
from activities.notifications import then_tell
from schemas import steps


def _fields(step: steps.Step) -> Collection[str]:
    """The step's fields for the body: all but the idempotency key, and `merchant_id` only when
    set."""
    left_out = {"idempotency_key"} | ({"merchant_id"} if step.merchant_id is None else set())
    return [name for name in type(step).model_fields if name not in left_out]


class LogisticsActivities:
    """The logistics service's activities, sharing one HTTP client."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    @activity.defn(name=catalog.CREATE_SHIPMENT)
    async def create_shipment(self, request: steps.CreateShipment) -> steps.ShipmentCreated:
        created = await self.client.send(
            "/shipments", request, steps.ShipmentCreated, fields=_fields(request)
        )
        return await then_tell(request, created)

    @activity.defn(name=catalog.BOOK_INSTALLATION)
    async def book_installation(self, request: steps.BookInstallation) -> steps.InstallationBooked:
        booked = await self.client.send(
            "/installations", request, steps.InstallationBooked, fields=_fields(request)
        )
        return await then_tell(request, booked)

    @activity.defn(name=catalog.BOOK_PICK_UP)
    async def book_pick_up(self, request: steps.BookPickUp) -> steps.PickUpBooked:
        held = await self.client.send(
            "/pickups", request, steps.PickUpBooked, fields=_fields(request)
        )
        return await then_tell(request, held)

    @activity.defn(name=catalog.CANCEL_PICK_UP)
    async def cancel_pick_up(self, request: steps.CancelPickUp) -> steps.Undone:
        return await self.client.send(
            path("pickups", request.pickup_id, "cancel"),
            request,
            steps.Undone,
            fields={"application_id", "reason"},
        )

    @activity.defn(name=catalog.RECALL_SHIPMENT)
    async def recall_shipment(self, request: steps.RecallShipment) -> steps.Undone:
        return await self.client.send(
            path("shipments", request.shipment_id, "recall"),
            request,
            steps.Undone,
            fields={"application_id", "reason"},
        )

    @activity.defn(name=catalog.CANCEL_INSTALLATION)
    async def cancel_installation(self, request: steps.CancelInstallation) -> steps.Undone:
        return await self.client.send(
            path("installations", request.appointment_id, "cancel"),
            request,
            steps.Undone,
            fields={"application_id", "reason"},
        )

    @activity.defn(name=catalog.ARRANGE_RETURN)
    async def arrange_return(self, request: steps.ArrangeReturn) -> steps.ReturnArranged:
        return await self.client.send(
            "/returns", request, steps.ReturnArranged, fields=_fields(request)
        )

    @activity.defn(name=catalog.SCHEDULE_TRAINING)
    async def schedule_training(self, request: steps.ScheduleTraining) -> steps.TrainingScheduled:
        scheduled = await self.client.send(
            "/trainings", request, steps.TrainingScheduled, fields=_fields(request)
        )
        return await then_tell(request, scheduled)

    @activity.defn(name=catalog.CANCEL_TRAINING)
    async def cancel_training(self, request: steps.CancelTraining) -> steps.Undone:
        return await self.client.send(
            path("trainings", request.session_id, "cancel"),
            request,
            steps.Undone,
            fields={"application_id", "reason"},
        )

    @activity.defn(name=catalog.BOOK_INSPECTION)
    async def book_inspection(self, request: steps.BookInspection) -> steps.InspectionBooked:
        return await self.client.send(
            "/inspections", request, steps.InspectionBooked, fields=_fields(request)
        )


def logistics_activities(base_url: str | None = None) -> LogisticsActivities:
    """The activities against `base_url`, else `POSFLOW_LOGISTICS_URL` or the embedded stack."""
    return LogisticsActivities(ServiceClient("logistics", base_url or service_url("logistics")))
