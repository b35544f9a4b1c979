from leukoshift.cli import main

main()
