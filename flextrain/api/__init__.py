"""The typed API of FlexTrain's custom resources (group flextrain.dev, version v1alpha1).

Plain typed Python (pydantic): imported by every layer, importing none of them.
"""

from flextrain.api.common import API_VERSION, GROUP, VERSION
from flextrain.api.devicetier import DeviceTier, DeviceTierSpec, DeviceTierStatus
from flextrain.api.flextrainjob import FlexTrainJob, FlexTrainJobSpec, FlexTrainJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "DeviceTier",
    "DeviceTierSpec",
    "DeviceTierStatus",
    "FlexTrainJob",
    "FlexTrainJobSpec",
    "FlexTrainJobStatus",
]
