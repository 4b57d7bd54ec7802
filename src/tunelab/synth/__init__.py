"""Synthetic data from documents: a teacher LLM writes records per chunk, filters keep the grounded ones.

    from tunelab.synth.run import run     # the stage: documents -> chunks -> teacher -> filters -> dataset

Documents are read and chunked by tunelab.documents (shared with RAG and causal training).
"""
