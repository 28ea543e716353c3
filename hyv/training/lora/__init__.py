"""LoRA adapters for the DiT: training (`hyv train lora`: hyv.training.lora.trainer), the trainable
adapter and its native file (hyv.training.lora.adapter), and the held-out evaluation of the
demonstration adapter (`hyv train lora-eval`: hyv.training.lora.evaluate). Import the submodules:
the package itself stays light, so `hyv train --help` does not load the models."""
