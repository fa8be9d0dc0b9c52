"""Predictor app: crystal graphs → heat of formation and band gap; few-shot adaptation."""
