"""Model code (torch, transformers, PEFT): loading, chat formatting, trainers, backends."""
