"""arseg.losses"""
