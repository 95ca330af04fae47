"""eGemma: a self-hosted AI workbench with OpenAI-shaped APIs over local models."""

__version__ = "0.5.0"
