"""`python -m gtnpipe.cli ...` (what torchrun runs: torchrun --nproc-per-node 2 -m gtnpipe.cli teacher ...)."""

from gtnpipe.cli import main

if __name__ == "__main__":  # a forkserver or spawn child imports this module as __mp_main__: it must not run again
    main()
