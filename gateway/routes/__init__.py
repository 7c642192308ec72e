"""The gateway's API, one module per audience, each router built with its guard
(`gateway.auth`): merchant, callbacks (services), operations, admin, internal (the worker),
public; the dashboard is `gateway.dashboard`."""
