"""Support bots from a user's own FAQ and documents: `pocketlm bot` builds one (`build`), `answer` runs it."""
