"""eGemma: a self-hosted AI workbench with OpenAI-shaped APIs over local models."""

import os as _os

# ONNX Runtime's Linux builds queue telemetry (the python path, the OS, a device id) in a SQLite
# database under ~/.cache/Microsoft/ for upload to Microsoft. An appliance that promises nothing
# leaves the box sends nothing and writes only inside DATA_DIR/MODELS_DIR: switch it off before
# anything imports onnxruntime (it reads this once, at import). An operator's own value wins.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.5.0"
