"""Evaluation: metrics, the timbre classifier behind them, and the listening report."""
