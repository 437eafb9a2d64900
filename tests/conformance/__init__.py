"""PEFT conformance: adapters saved by real PEFT merge exactly or are refused in one line."""
