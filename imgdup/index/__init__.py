"""The store: catalogue, embeddings and FAISS index; search and reports."""
