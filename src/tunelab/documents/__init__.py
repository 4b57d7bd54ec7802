"""Documents: reading files into text with their headings (`ingest`) and cutting them into chunks (`chunk`).

One service for every stage that starts from documents: synthetic data (tunelab.synth), the RAG index
(tunelab.rag) and causal training on raw documents (tunelab.train.documents).

    from tunelab.documents.ingest import ingest
    from tunelab.documents.chunk import chunk_documents

    result = ingest("docs/")              # result.documents, result.skipped (name + reason)
    chunks = chunk_documents(result.documents, max_tokens=256, overlap=32)
"""
