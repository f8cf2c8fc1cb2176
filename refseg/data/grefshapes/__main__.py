from ...cli import run
from .cli import main

if __name__ == "__main__":
    run(main, prog="python -m refseg.data.grefshapes")
