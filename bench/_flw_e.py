import sys
sys.argv.append("-E")
from saga.cli import main
main()
