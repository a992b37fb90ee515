"""Putting a model in front of people: the terminal chat (and the coming HTTP server), built on
:mod:`pocketlm.inference`."""
