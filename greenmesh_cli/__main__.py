from greenmesh_cli.main import app

app()
