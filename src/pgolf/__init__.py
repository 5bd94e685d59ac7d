"""pgolf: a framework for the OpenAI Parameter Golf challenge (see README.md)."""

__version__ = "0.1.0"
