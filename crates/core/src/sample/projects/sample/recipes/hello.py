import os
import platform
import sys

print(f"{os.environ.get('SAMPLE_GREETING', 'hello')}: Python {platform.python_version()} on {platform.node()}")
print(f"recipe {os.environ.get('CAPSTAN_RECIPE', '?')} of project {os.environ.get('CAPSTAN_PROJECT', '?')}")
total = sum(i * i for i in range(1_000_000))
print(f"sum of squares below one million: {total}")
sys.stdout.flush()
