"""dnnlab's packaged config groups (Hydra's search path `pkg://dnnlab.conf`)."""
from pathlib import Path

CONF_DIR = Path(__file__).parent  # the one place that knows where the packaged YAML lives
