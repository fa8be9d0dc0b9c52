"""Plain ``nn.Module`` models (no training loops); import submodules directly."""
