"""Custom search attributes operators filter on. Nothing personal goes in them."""

from temporalio.common import SearchAttributeKey

STAGE = SearchAttributeKey.for_keyword("PosStage")
CHANNEL = SearchAttributeKey.for_keyword("PosChannel")
MERCHANT_TYPE = SearchAttributeKey.for_keyword("PosMerchantType")
REVIEW_ROUND = SearchAttributeKey.for_int("PosReviewRound")
NEEDS_ATTENTION = SearchAttributeKey.for_bool("PosNeedsAttention")
STAGE_DEADLINE = SearchAttributeKey.for_datetime("PosStageDeadline")

ALL = (STAGE, CHANNEL, MERCHANT_TYPE, REVIEW_ROUND, NEEDS_ATTENTION, STAGE_DEADLINE)
