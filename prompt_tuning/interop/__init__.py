"""Moving prompts between this library and other ecosystems (Hugging Face PEFT)."""
