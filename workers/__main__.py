"""``python -m workers``: run one worker with settings from the environment (``CREME_*``)."""

from workers.worker import main

if __name__ == "__main__":
    main()
