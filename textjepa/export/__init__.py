"""`textjepa export`: a checkpoint as a folder other libraries load (sentence-transformers)."""
