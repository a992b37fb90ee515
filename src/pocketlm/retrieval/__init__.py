"""Retrieval: find the passage of the user's own data that answers a question.

`embed` turns text into meaning vectors with a sentence-embedding model (all-MiniLM-L6-v2 by default),
`lexical` ranks by shared words (BM25), `index` fuses both over FAQ entries and document passages and
saves them as plain data, `passages` cuts documents into passages that keep their headings, and `faq`
reads a user's FAQ file.
"""
