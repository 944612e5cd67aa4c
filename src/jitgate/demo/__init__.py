"""The demo: a small upstream API that holds a secret key, and the fixture around it."""
