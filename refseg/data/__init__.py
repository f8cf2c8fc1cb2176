"""Datasets: the refer layout (RefCOCO family, refshapes), Hugging Face exports, preprocessing."""
