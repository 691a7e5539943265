from edge_app.cli.main import main

main()
