from fedmkt.cli import main

main()
