"""The name of every activity the onboarding workflow calls.

The workflow refers to activities by these names with typed inputs and outputs from
`schemas.steps`, so the implementation behind a name (a sandbox service client, a bank's real
API client, a test's stand-in) can change without touching the workflow.
"""

from typing import Final

VALIDATE_DOCUMENTS: Final = "validate_documents"
NOTIFY_MERCHANT: Final = "notify_merchant"
PROJECT_STATUS: Final = "project_status"
# Push, then pull: what a service recorded for an application, asked for when a deadline passes.
READ_SERVICE_EVENTS: Final = "read_service_events"

OPEN_REVIEW_CASE: Final = "open_review_case"
REQUEST_SITE_SURVEY: Final = "request_site_survey"
ESCALATE_REVIEW: Final = "escalate_review"
CLOSE_REVIEW_CASE: Final = "close_review_case"

ISSUE_CONTRACT: Final = "issue_contract"
VOID_CONTRACT: Final = "void_contract"
REFUND_DEPOSIT: Final = "refund_deposit"

RESERVE_TERMINALS: Final = "reserve_terminals"
REGISTER_TERMINALS: Final = "register_terminals"
RELEASE_TERMINALS: Final = "release_terminals"

CREATE_SHIPMENT: Final = "create_shipment"
BOOK_INSTALLATION: Final = "book_installation"
RECALL_SHIPMENT: Final = "recall_shipment"
CANCEL_INSTALLATION: Final = "cancel_installation"
BOOK_PICK_UP: Final = "book_pick_up"
CANCEL_PICK_UP: Final = "cancel_pick_up"
ARRANGE_RETURN: Final = "arrange_return"

ISSUE_ACTIVATION_CODES: Final = "issue_activation_codes"
RUN_TEST_TRANSACTION: Final = "run_test_transaction"
SCHEDULE_TRAINING: Final = "schedule_training"
CANCEL_TRAINING: Final = "cancel_training"
ENABLE_ACQUIRING: Final = "enable_acquiring"

# After go-live: the merchant's account.
VALIDATE_SETTLEMENT: Final = "validate_settlement"
PROJECT_MERCHANT: Final = "project_merchant"
ISSUE_BILL: Final = "issue_bill"
REFUND_PAYMENT: Final = "refund_payment"
TERMINATE_CONTRACT: Final = "terminate_contract"
CHANGE_ACQUIRING: Final = "change_acquiring"
REGISTER_MORE_TERMINALS: Final = "register_more_terminals"
SWAP_TERMINAL: Final = "swap_terminal"
UNBIND_TERMINAL: Final = "unbind_terminal"
BIND_SETTLEMENT: Final = "bind_settlement"
RETIRE_MERCHANT: Final = "retire_merchant"
OPEN_REBINDING_REVIEW: Final = "open_rebinding_review"
BOOK_INSPECTION: Final = "book_inspection"

ALL: Final = (
    VALIDATE_DOCUMENTS,
    NOTIFY_MERCHANT,
    PROJECT_STATUS,
    READ_SERVICE_EVENTS,
    OPEN_REVIEW_CASE,
    REQUEST_SITE_SURVEY,
    ESCALATE_REVIEW,
    CLOSE_REVIEW_CASE,
    ISSUE_CONTRACT,
    VOID_CONTRACT,
    REFUND_DEPOSIT,
    RESERVE_TERMINALS,
    REGISTER_TERMINALS,
    RELEASE_TERMINALS,
    CREATE_SHIPMENT,
    BOOK_INSTALLATION,
    RECALL_SHIPMENT,
    CANCEL_INSTALLATION,
    BOOK_PICK_UP,
    CANCEL_PICK_UP,
    ARRANGE_RETURN,
    ISSUE_ACTIVATION_CODES,
    RUN_TEST_TRANSACTION,
    SCHEDULE_TRAINING,
    CANCEL_TRAINING,
    ENABLE_ACQUIRING,
    VALIDATE_SETTLEMENT,
    PROJECT_MERCHANT,
    ISSUE_BILL,
    REFUND_PAYMENT,
    TERMINATE_CONTRACT,
    CHANGE_ACQUIRING,
    REGISTER_MORE_TERMINALS,
    SWAP_TERMINAL,
    UNBIND_TERMINAL,
    BIND_SETTLEMENT,
    RETIRE_MERCHANT,
    OPEN_REBINDING_REVIEW,
    BOOK_INSPECTION,
)
