"""One exception type for every input the user can fix.

Its message is a single line: what is wrong and how to fix it. The CLI turns it into exit
code 2, the app into ``st.error``.
"""


class MergecoreError(ValueError):
    """Bad input or a refused operation; ``str(err)`` is one line naming the problem and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
