"""The data plane: enforcement, credential injection, proxying, decision endpoints."""
