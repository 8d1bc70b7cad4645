"""A second process that swaps a log for a link to a secret in a tight loop.

Run as `python -c SWAPPER KIND NAME GOOD EVIL STOP`: KIND `file` alternates a regular
file and a symlink to EVIL at NAME; `dir` alternates a real directory and a symlink to
a directory outside the root. It creates STOP.KIND once started and runs until STOP
exists, then prints how many swaps it made. Shared by the gate's attack and path tests.
"""

SWAPPER = r"""
import os, sys, time
kind, name, good, evil, stop = sys.argv[1:6]
tmp = name + ".swap"
n = 0


def hold():  # stay in each state for 0.2 ms: wherever the scheduler stops this process,
    # it is most likely in one of the two states, not between them
    end = time.monotonic() + 0.0002
    while time.monotonic() < end:
        os.lstat(name)


open(stop + "." + kind, "w").close()  # started
while not os.path.exists(stop):
    if kind == "file":
        with open(tmp, "wb") as f:
            f.write(open(good, "rb").read())
        os.chmod(tmp, 0o644)
        os.replace(tmp, name)  # a regular log file...
        hold()
        os.symlink(evil, tmp)
        os.replace(tmp, name)  # ...then a symlink to the secret, at the same name
        hold()
    else:
        os.rename(good, name)  # a real directory...
        hold()
        os.rename(name, good)
        os.symlink(evil, name)  # ...then a symlink to a directory outside the root
        hold()
        os.unlink(name)
    n += 1
print(n)
"""
