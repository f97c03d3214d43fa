"""matterflow tooling: the CLI, the Azurite launcher and synthetic documents. Never deployed to Windmill; the
Windmill scripts live under f/matter/."""
