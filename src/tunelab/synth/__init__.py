"""Synthetic data from documents: ingestion (`ingest`) and chunking (`chunk`), shared with RAG.

    from tunelab.synth.ingest import ingest
    from tunelab.synth.chunk import chunk_documents

    result = ingest("docs/")              # result.documents, result.skipped (name + reason)
    chunks = chunk_documents(result.documents, max_tokens=256, overlap=32)
"""
