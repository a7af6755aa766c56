"""The request pipeline: authenticate → authorize → execute → audit → respond."""
