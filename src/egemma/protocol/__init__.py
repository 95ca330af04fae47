"""Wire models: request bodies we parse (responses use the openai-python types)."""
