from hpcl4sr.cli import main

main()
