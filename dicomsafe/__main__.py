from dicomsafe.cli import main
main()
