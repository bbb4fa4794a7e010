"""`convirt serve`: case search and explained zero-shot diagnosis over an index folder, as a web API and page."""

from convirt.serve.service import CaseService

__all__ = ["CaseService"]
