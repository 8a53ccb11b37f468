from .cli import main

if __name__ == "__main__":  # guarded: ingest's worker processes (spawned) import this module again
    raise SystemExit(main())
