"""`python -m flows.serve`: serve every deployment (the same as `perfcycle serve`)."""

from perfcycle.orchestration.serve import deployments, main

__all__ = ["deployments", "main"]

if __name__ == "__main__":
    main()
