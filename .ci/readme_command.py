"""Print one of the README's two commands: `course` (set up and open the lessons) or `test`.

Each sits in the README in a ```bash block right after a marker line `<!-- command: NAME -->`, so CI runs
exactly what a newcomer copies.
"""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command(name):
    match = re.search(rf"<!-- command: {name} -->\s*```bash\n(.+?)\n```", README.read_text(), re.S)
    if not match:
        raise SystemExit(f"README.md has no ```bash block after '<!-- command: {name} -->'")
    return match.group(1).strip()


if __name__ == "__main__":
    print(readme_command(sys.argv[1]))
