"""FlexTrain: one depth-flexible network trained across heterogeneous devices."""

__version__ = "0.1.0"
