"""adserving: the serving stage, after ranking. The auction that turns scored candidates into the served list
(`adserving.auction`: eCPM, order, advertiser cap, the ads' bids and advertisers), the day a workspace serves
(`adserving.versions`), and the two-stage query that retrieves, ranks and orders for one day's versions
(`adserving.two_stage`: `TwoStage`, `query`, `ServeConfig`), which `derm query`, `derm eval`'s slate value
and the HTTP service (`dermserve`) all call."""

from adserving.auction import CONVERSION_OBJECTIVE, ECPM_SCALE, AdBook, Order, ecpm, select_top
from adserving.two_stage import ServeConfig, TwoStage, UnknownUser, query
from adserving.versions import publish_workspace, served_store_day, serving_day

__all__ = [
    "CONVERSION_OBJECTIVE",
    "ECPM_SCALE",
    "AdBook",
    "Order",
    "ServeConfig",
    "TwoStage",
    "UnknownUser",
    "ecpm",
    "publish_workspace",
    "query",
    "select_top",
    "served_store_day",
    "serving_day",
]
