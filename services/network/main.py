from shared import lean

lean.prepare()

from .service import main  # noqa: E402

if __name__ == "__main__":
    main()
