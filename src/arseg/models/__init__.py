"""arseg.models"""
