"""Grant tokens: signing keys, JWKS, issuing and verifying."""
