"""Use cases: each one transaction of domain rules, storage and audit.

Every adapter (HTTP, CLI through HTTP, the web page) calls these and nothing below
them; rules such as "no self-approval" live here or in the domain, never in a route.
"""
