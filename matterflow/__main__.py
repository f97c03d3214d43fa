from matterflow.cli import main

main()
