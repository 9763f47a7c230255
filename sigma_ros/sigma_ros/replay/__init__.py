"""Replay side: the bag player, live and offline replay evaluation, reports and the demo."""
